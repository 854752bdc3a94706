"""The similarity index: its segments, manifests and graphs as plain data (`index`), and its upkeep
on the object store, a day at a time, safe under runs at once (`store`)."""
