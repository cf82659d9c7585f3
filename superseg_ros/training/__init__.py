"""Training: synthetic shapes, homographic adaptation, losses and the training loops."""
