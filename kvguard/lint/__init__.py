"""The static analyzer: a cheap conservative prefilter, a project index, libcst rules."""
