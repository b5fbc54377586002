"""The causal transformer shared by the sequence policies (paper sec. 3.4, table 4).

nanoGPT-style pre-LayerNorm blocks (``x + attn(ln(x))``, ``x + mlp(ln(x))``) with ReLU in the MLP
(the paper's activation) and ``scaled_dot_product_attention`` for the attention itself.
:class:`DecisionModel` puts the per-timestep embeddings around it:

* ``token_layout="vsa"`` (the paper): three tokens per timestep, ``(c_t, s_t, a_t)``, where
  ``c_t`` is the conditioning scalar (V(s_t) for ``ipd-dt``, return-to-go for ``dt``);
* ``token_layout="sa"``: the conditioning scalar folded into the state token, two tokens per
  timestep ``(s_t + c_t, a_t)``: 2/3 of the tokens, so about 2/3 of the compute;
* ``token_layout="s"``: one token per timestep, ``s_t + c_t + a_{t-1}`` (the previous action
  of the window, zero for its first step): 1/3 of the tokens.

Every token of timestep ``t`` gets a learned position embedding: of its absolute time in the
episode (``position="timestep"``, clamped below ``max_timestep``; what the Decision Transformer
and QT reference code and d3rlpy do) or of its place in the window (``position="window"``).

In every layout the action ``a_t`` is read from the output at the state token of step ``t``,
which by causality sees ``c_t``, ``s_t`` and the whole past but never ``a_t`` itself. Output
actions are ``tanh``-squashed and scaled to the action bounds.

Shape letters: ``B`` batch, ``T`` timesteps in the window (the context K), ``L`` tokens
(``T * tokens_per_step``), ``C`` embedding width, ``O``/``A`` observation/action dims.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "TOKEN_LAYOUTS",
    "POSITIONS",
    "CausalSelfAttention",
    "Block",
    "CausalTransformer",
    "DecisionModel",
]

#: token layout name -> tokens per timestep
TOKEN_LAYOUTS: dict[str, int] = {"vsa": 3, "sa": 2, "s": 1}
#: token layout name -> which token of a timestep is its state token (where a_t is read)
_STATE_SLOT: dict[str, int] = {"vsa": 1, "sa": 0, "s": 0}
#: what the position embedding of a timestep's tokens indexes
POSITIONS: tuple[str, ...] = ("timestep", "window")


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention; ``attn_mask`` (B,1,L,L) bool adds key padding."""

    def __init__(self, n_embd: int, n_head: int, dropout: float):
        super().__init__()
        assert n_embd % n_head == 0, f"n_embd={n_embd} is not divisible by n_head={n_head}"
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.resid_dropout = nn.Dropout(dropout)
        self.n_head = n_head
        self.dropout = dropout

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, L, C = x.size()  # batch, tokens, embedding width
        q, k, v = self.c_attn(x).split(C, dim=2)
        k = k.view(B, L, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, L, hs)
        q = q.view(B, L, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, L, hs)
        v = v.view(B, L, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, L, hs)
        p = self.dropout if self.training else 0.0
        if attn_mask is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:  # the mask already contains the causal part
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        y = y.transpose(1, 2).contiguous().view(B, L, C)  # re-assemble heads: (B, L, C)
        return self.resid_dropout(self.c_proj(y))


class Block(nn.Module):
    """Pre-LN transformer block with a ReLU MLP (4x wide)."""

    def __init__(self, n_embd: int, n_head: int, dropout: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd),
            nn.ReLU(),
            nn.Linear(4 * n_embd, n_embd),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask)
        x = x + self.mlp(self.ln_2(x))
        return x


class CausalTransformer(nn.Module):
    """A stack of causal blocks over already-embedded tokens: (B,L,C) -> (B,L,C)."""

    def __init__(self, n_layer: int, n_embd: int, n_head: int, max_tokens: int, dropout: float):
        super().__init__()
        self.max_tokens = max_tokens
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([Block(n_embd, n_head, dropout) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd)
        self.apply(_init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of residual projections
            if name.endswith("c_proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (B,L,C); ``key_valid`` (B,L) bool, False on left padding (None: no padding)."""
        B, L, C = x.size()
        assert L <= self.max_tokens, (
            f"Cannot forward a sequence of {L} tokens, the transformer was built for at most "
            f"{self.max_tokens}"
        )
        attn_mask = None
        if key_valid is not None and not bool(key_valid.all()):
            causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()  # (L, L)
            eye = torch.eye(L, dtype=torch.bool, device=x.device)
            # a query sees earlier valid keys; every token sees itself so that padded rows are
            # never fully masked (which would give NaN); padded outputs are ignored downstream
            attn_mask = (causal & key_valid[:, None, :]) | eye  # (B, L, L)
            attn_mask = attn_mask[:, None]  # (B, 1, L, L), broadcast over heads
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, attn_mask)
        return self.ln_f(x)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)


class DecisionModel(nn.Module):
    """Embeds (c_t, s_t, a_t) windows, runs the causal transformer, predicts a_t.

    ``forward(obs (B,T,O), act (B,T,A), cond (B,T), mask (B,T), timesteps (B,T)) -> (B,T,A)``:
    the action of each step predicted from the conditioning and state of that step and
    everything before it. ``obs`` and ``cond`` are expected already normalised; ``mask`` is
    False on left padding; ``timesteps`` (int, time in the episode) is needed when
    ``position="timestep"``.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        act_low: torch.Tensor,
        act_high: torch.Tensor,
        context: int = 20,
        n_layer: int = 4,
        n_embd: int = 256,
        n_head: int = 4,
        dropout: float = 0.01,
        token_layout: str = "vsa",
        position: str = "timestep",
        max_timestep: int = 1000,
        position_init_std: float | None = None,
        past_actions: bool = True,
    ):
        super().__init__()
        if token_layout not in TOKEN_LAYOUTS:
            raise ValueError(
                f"token_layout must be one of {sorted(TOKEN_LAYOUTS)}, got {token_layout!r}"
            )
        if position not in POSITIONS:
            raise ValueError(f"position must be one of {list(POSITIONS)}, got {position!r}")
        self.obs_dim, self.act_dim, self.context = obs_dim, act_dim, context
        self.token_layout, self.position, self.max_timestep = token_layout, position, max_timestep
        self.past_actions = past_actions  # False: action inputs are zeroed (the model sees none)
        self.tokens_per_step = TOKEN_LAYOUTS[token_layout]
        self.embed_obs = nn.Linear(obs_dim, n_embd)
        self.embed_act = nn.Linear(act_dim, n_embd)
        self.embed_cond = nn.Linear(1, n_embd)
        # time in the episode (clamped) or place in the window
        self.embed_pos = nn.Embedding(max_timestep if position == "timestep" else context, n_embd)
        if position_init_std is not None:  # else PyTorch's N(0, 1)
            nn.init.normal_(self.embed_pos.weight, mean=0.0, std=position_init_std)
        self.embed_ln = nn.LayerNorm(n_embd)
        self.transformer = CausalTransformer(
            n_layer, n_embd, n_head, context * self.tokens_per_step, dropout
        )
        self.head = nn.Linear(n_embd, act_dim)
        low = torch.as_tensor(act_low, dtype=torch.float32).reshape(act_dim)
        high = torch.as_tensor(act_high, dtype=torch.float32).reshape(act_dim)
        self.register_buffer("act_mid", (high + low) / 2)
        self.register_buffer("act_half", (high - low) / 2)

    def forward(
        self,
        obs: torch.Tensor,
        act: torch.Tensor,
        cond: torch.Tensor,
        mask: torch.Tensor | None = None,
        timesteps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, T, O = obs.shape
        A, C, k = self.act_dim, self.embed_pos.embedding_dim, self.tokens_per_step
        assert O == self.obs_dim, f"obs must be (B,T,{self.obs_dim}), got {tuple(obs.shape)}"
        assert act.shape == (B, T, A), f"act must be (B,T,A)=({B},{T},{A}), got {tuple(act.shape)}"
        assert cond.shape == (B, T), f"cond must be (B,T)=({B},{T}), got {tuple(cond.shape)}"
        assert T <= self.context, f"window of {T} steps is longer than the context {self.context}"
        if not self.past_actions:  # states and tokens only: nothing of the actions taken
            act = torch.zeros_like(act)
        if self.position == "timestep":
            assert timesteps is not None and timesteps.shape == (B, T), (
                f"position='timestep' needs timesteps (B,T)=({B},{T}), got "
                f"{None if timesteps is None else tuple(timesteps.shape)}"
            )
            pos = self.embed_pos(timesteps.long().clamp(0, self.max_timestep - 1))  # (B, T, C)
        else:  # place in the window, the newest step last
            pos = self.embed_pos(torch.arange(self.context - T, self.context, device=obs.device))
        s = self.embed_obs(obs) + pos  # (B, T, C)
        a = self.embed_act(act) + pos  # (B, T, C)
        c = self.embed_cond(cond.unsqueeze(-1))  # (B, T, C)
        if self.token_layout == "vsa":
            # interleave per step: (c_0, s_0, a_0, c_1, s_1, a_1, ...) -> (B, 3T, C)
            tokens = torch.stack([c + pos, s, a], dim=2).reshape(B, k * T, C)
        elif self.token_layout == "sa":
            # "sa", V folded into the state token: (s_0 + c_0, a_0, s_1 + c_1, ...) -> (B, 2T, C)
            tokens = torch.stack([s + c, a], dim=2).reshape(B, k * T, C)
        else:
            # "s", one token per step: (s_0 + c_0, s_1 + c_1 + a_0, ...) -> (B, T, C)
            a_prev = self.embed_act(F.pad(act[:, :-1], (0, 0, 1, 0)))  # a_{t-1}, zero at t=0
            tokens = s + c + a_prev
        key_valid = None
        if mask is not None:
            assert mask.shape == (B, T), f"mask must be (B,T)=({B},{T}), got {tuple(mask.shape)}"
            key_valid = mask.bool().repeat_interleave(k, dim=1)  # (B, L): same for a step's tokens
        h = self.transformer(self.embed_ln(tokens), key_valid)  # (B, L, C)
        slot = _STATE_SLOT[self.token_layout]
        h_state = h.reshape(B, T, k, C)[:, :, slot]  # the state token of every step: (B, T, C)
        return self.act_mid + self.act_half * torch.tanh(self.head(h_state))  # (B, T, A)
