"""minvar: a minimal, heavily commented reference implementation of VAR (Tian et al., NeurIPS 2024).

Paper: Tian et al., "Visual Autoregressive Modeling" (arXiv 2404.02905), Section 3 (the method); each module names
its own section.

    from minvar import generate, load_official_var, load_official_vqvae
    vae = load_official_vqvae("vae_ch160v4096z32.pth")
    var = load_official_var("var_d16.pth", vae=vae)
    imgs = generate(var, vae, labels, cfg=1.5, top_k=900, top_p=0.96, seed=0)
"""
from minvar.quantizer import MultiScaleQuantizer
from minvar.vqvae import VQVAE, VQVAEConfig
from minvar.var import VAR, VARConfig
from minvar.sampling import box_keep_mask, edit, generate
from minvar.io.official import CheckpointError, load_official_var, load_official_vqvae
from minvar.io.checkpoint import MINVAR_VERSION as __version__, load_tokenizer, load_var
