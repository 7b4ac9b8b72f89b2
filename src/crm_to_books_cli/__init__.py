"""Local tools around the service: the `crm-to-books` CLI, the Zoho sandbox, the local stack.

Nothing here is shipped to Lambda.
"""
