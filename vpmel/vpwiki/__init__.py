"""Building VPWiki (paper §3, Appendix A.6): automatic annotation (entailment, grounding: CLIP or
OFA), boxes, human verification (Label Studio), the split and the released schema.
"""
