"""Training-free one-shot segmentation by semantic patch matching (Matcher / GF-SAM style):
dense semantic features, bidirectional patch matching, SAM proposals, instance-level
filtering and merging."""
