"""The dataset phase: photos in, faces found, the paper's rules applied, statistics and exports out.

``ingest`` (person folders, JSONL, tables, webdataset shards), ``faces`` (insightface packs),
``analyze`` / ``analyze_ray`` (faces, keypoints, embeddings, pose; in threads or on Ray),
``curate`` (the paper's rules and the identity check), ``attributes`` (tags from captions),
``stats`` (Table 1), ``browse`` (filters, pages, one image's detail), ``thumbnails`` and ``draw``
(what the browser shows), ``export`` (the CrossFaceID training layout) and ``pipeline`` (the
chains the demo workspace is built with).
"""
