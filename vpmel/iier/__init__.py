"""IIER (§5, Appendix A.5): the model and its units, inputs, training, exact ranking, candidate
generation, the frozen-tower feature store, and statistics over seeds and mentions (bootstrap CIs,
McNemar).
"""
