"""Inference on a trained core: predict, forecast and live streams.

common.py       what the three share: the model check, input reading, the chunked run
prediction.py   predict: whole sequences of any length, chunk by chunk
forecasting.py  forecast: warm up on context, roll out a horizon
streams.py      Streams / advance: many live sequences stepped one step at a time
"""
