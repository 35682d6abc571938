"""Scene memory: the user's imported texts cut into scenes, embedded and stored in
ChromaDB, plus the SQLite journal of every conversation. Imports nothing else of ours."""
