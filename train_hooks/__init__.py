"""The bundled corner-token trainer (LoTLIP): data loading, model, loss, loop, evaluation."""
