"""Sharing one URL space while moving a page at a time: route rules, their matcher,
shadow comparison, the migration page and its counts, one sign-in."""
