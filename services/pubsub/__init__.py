"""The publish-subscribe service (XEP-0060) and the personal eventing service of every
account (XEP-0163)."""
