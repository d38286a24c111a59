"""Training: datasets of ROI patches, the autoencoder / denoiser / classifier trainers, DDP set-up."""
