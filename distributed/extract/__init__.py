"""Features from raw video: decoding and sampling exactly as the reference AVVP extractors do."""
