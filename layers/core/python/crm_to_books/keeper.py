"""The token keeper (EventBridge schedule): keeps each connection's shared access token fresh,
so imports never refresh one themselves, and finds a revoked refresh token (or a repaired
one, or a repaired scope) before an import has to."""

from __future__ import annotations

from crm_to_books.settings import Settings
from crm_to_books.tokens import TokenProvider
from crm_to_books.topology import TOKEN_KEEPER_RATE_MINUTES


class TokenKeeper:
    def __init__(self, settings: Settings, tokens: TokenProvider) -> None:
        self.settings = settings
        self.tokens = tokens

    def run(self) -> list[dict[str, str]]:
        # Renew only a token that would fall inside the imports' own margin before the next
        # run: then imports never refresh, and a token serves ~55 of its 60 minutes.
        ahead = self.settings.token_refresh_margin_seconds + TOKEN_KEEPER_RATE_MINUTES * 60 + 60
        return [self.tokens.keep_fresh(name, ahead) for name in sorted(self.settings.connections)]
