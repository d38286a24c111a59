"""Networks, built on MONAI: VQ-GAN autoencoder, latent denoiser, noisy-latent classifier."""
