"""Who is calling: a verified JWT (OAuth 2.1 resource server), an API key, or nothing.

Verification is a value, never an exception: a ``Credential``, a ``Rejected`` (with
whether a credential was presented, for the challenge), or None when nothing was.
"""

from proxy.identity.build import build_verifier
from proxy.identity.credential import Credential, Rejected, Verifier
from proxy.identity.metadata import challenge, metadata_document, metadata_url

__all__ = [
    "Credential",
    "Rejected",
    "Verifier",
    "build_verifier",
    "challenge",
    "metadata_document",
    "metadata_url",
]
