"""An email backend with a bug in it: raises something no delivery code expects."""

from django.core.mail.backends.base import BaseEmailBackend


class EmailBackend(BaseEmailBackend):
    def send_messages(self, email_messages: list) -> int:
        raise RuntimeError("backend bug")
