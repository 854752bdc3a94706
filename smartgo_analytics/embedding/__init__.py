"""The embedding work of a day: per-sale download, check, copy and embed (`work`), spread over a
pool of worker processes forked from a preloaded server (`worker_server`)."""
