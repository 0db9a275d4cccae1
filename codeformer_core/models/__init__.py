"""Networks and the one loading path: CodeFormer, RetinaFace, ParseNet."""
