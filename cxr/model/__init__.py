"""The networks, their training, thresholds and operating points, Grad-CAM and model loading."""
