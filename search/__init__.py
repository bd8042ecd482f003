"""Search layer: SearchEngine (filters + ANN + exact re-rank) and the FastAPI app.

Reads indexes through `indexer.store` (read side) and embeds queries with `encoder`.
Not built yet: see the search-engine issue.
"""
