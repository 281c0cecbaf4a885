"""Training loops, written out plainly: supervised, self-supervised, GAN."""
