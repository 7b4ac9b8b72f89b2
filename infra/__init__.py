"""The CDK app that deploys crm-to-books: a thin stack composed of one construct per concern."""

import os

# jsii prints a banner on every run under Node 20; the Makefile sets this too, but the app and
# the tests are also run directly.
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
