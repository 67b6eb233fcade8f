"""Inbound mail of the sender accounts: replies, auto-replies, bounces, complaints and
unsubscribe requests, read from a mailbox (`maildir`: the local sink's), told apart
(`classify`) and applied to the messages they answer (`inbound`)."""
