"""Speaker diarization parts: speech frames, window embeddings, clustering, turns, channel and
pyannote backends, and merging speakers into the transcript. The stage is ``maie.pipeline.speakers``."""
