"""`make bench`: the performance figures, each measured against its baseline in the same run."""
