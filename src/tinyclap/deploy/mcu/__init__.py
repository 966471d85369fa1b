"""Microcontroller deployment: the TFLM export (tflm.py) and the C log-mel front end (frontend.py, c/)."""
