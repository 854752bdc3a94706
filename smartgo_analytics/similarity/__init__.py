"""The similarity index over the sold items' vectors, a usearch graph per segment of each tenant's
days: `segments` (a segment's files and a day's vectors spooled to disk), `manifest` (which days
each segment holds, committed as one object), `graph` (the usearch graph of a segment), `index` (a
tenant's segments opened to search), `store` (the upkeep on the object store, a day at a time, safe
under runs at once) and `quality` (how good a day's vectors look, with `thresholds`)."""
