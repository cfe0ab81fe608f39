"""End to end: the product as its users get it, a served process (`voxgate serve`), the SDK in
Node, the demo page in real browsers over a real audio path, the image. The other tests mirror
the modules they check."""
