"""The live blog: posts pushed to every reader, thumbnails made by workers, chat rooms."""
