"""Reading datasets into the record tables: schema, readers, images, data quality, and which
mentions name their entity in the caption (subsets).
"""
