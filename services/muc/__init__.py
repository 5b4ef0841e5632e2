"""The multi-user chat service (XEP-0045): rooms owned by partition of their bare JID."""
