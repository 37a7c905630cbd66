"""Detective-VLM (§5.2): the VLM, its pretraining stand-in, instruction tuning and the cached
answers.
"""
