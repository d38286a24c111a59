"""Lesions inserted into scans with exact truth: ``synthesize`` (:mod:`.synthesize`), its methods (:mod:`.paste`)."""
