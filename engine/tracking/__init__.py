"""Engagement from the web: signed links in the messages (`links`), the tracking server that
answers them (`server`), the rules that tell a machine from a person (`machine`) and the batched
writer of their events (`events`)."""
