"""Data: readers for each on-disk layout -> :class:`Case`; phantom; slice store; splits; sampling."""
