"""torch 2.13.0+cpu: the backward of a 1x1, stride-2 transposed convolution with output_padding=1 on a
channels_last input corrupts the heap inside oneDNN (segfault, "corrupted double-linked list",
"double free or corruption"). NCHW works; so does channels_last with torch.backends.mkldnn.enabled = False.
Run: python onednn_convtranspose_1x1.py [--no-mkldnn]
"""
import sys

import torch

torch.backends.mkldnn.enabled = "--no-mkldnn" not in sys.argv
w = torch.randn(16, 3, 1, 1, requires_grad=True)
x = torch.randn(2, 16, 32, 32).contiguous(memory_format=torch.channels_last).requires_grad_()
torch.nn.functional.conv_transpose2d(x, w, stride=2, output_padding=1).sum().backward()
print(f"torch {torch.__version__}, mkldnn {torch.backends.mkldnn.enabled}: backward finished", flush=True)
