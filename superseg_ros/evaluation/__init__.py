"""superseg-eval: how good is a model? SuperPoint/HPatches metrics against OpenCV SIFT and ORB.

datasets  HPatches-format sequences and generated (seeded homography) pairs
metrics   repeatability, localisation error, homography accuracy/AUC, NN mAP, MS, MMA
baselines one `extract(image_rgb, max_keypoints)` interface for SIFT, ORB and superseg models
report    aligned table, metrics.json/.md, plots, match overlays
cli       the superseg-eval command
"""
