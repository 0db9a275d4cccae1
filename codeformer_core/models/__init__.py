"""Networks and the one loading path: CodeFormer, RetinaFace, ParseNet.

Importing this package imports no network code (and not torch): front ends read
``DTYPE_CHOICES`` from here for their option lists without paying for torch.
"""

# The precision choices front ends offer (the loader node's dtype combo, the CLI's --dtype);
# loader.DTYPES also accepts aliases (float32, half, bfloat16 ...).
DTYPE_CHOICES = ("auto", "fp32", "fp16", "bf16")
