"""The image-text encoder every later stage uses: model (demo and hub) and the demo encoder's
training.
"""
