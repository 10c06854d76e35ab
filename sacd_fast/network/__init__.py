"""The network: teacher, OCBE bottleneck, student decoder, FeaCali, loss and the SACD model."""
