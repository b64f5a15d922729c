"""Pure PyTorch library behind the ComfyUI-TalkingFace nodes; imports without ComfyUI."""
