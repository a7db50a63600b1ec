"""What the service and its clients share: wire fields and codes, no sockets; a client may
import it."""
