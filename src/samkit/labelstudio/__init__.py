"""Label Studio: its brush RLE (:mod:`.brush`) and an ML backend (:mod:`.backend`, optional extra)."""
