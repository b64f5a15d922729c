"""ComfyUI-TalkingFace: talking, emoting, re-enacted and face-swapped portraits as ComfyUI nodes."""
