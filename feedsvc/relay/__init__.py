"""`feedsvc relay`: a forwarding tier between publishers and subscribers on other hosts.

Data flow: upstream PUB sockets -> XSUB (subscribed to everything) -> libzmq's proxy, in C ->
PUB bound on the relay's endpoints -> subscribers. Sync and recovery requests go through
`requests.RequestForwarder`, one Python step per request, never per tick.
"""
