"""Tiny, randomly initialised third-party architectures for the coverage matrix.

Each builder returns ``(model, example_inputs)``; configs are as small as the architecture allows so
the whole matrix runs in seconds. Hugging Face models come from transformers' config classes and
MONAI's from ``monai.networks.nets``; nothing is downloaded.
"""

from __future__ import annotations

import torch

_TOKENS = 8


def _ids(vocab: int = 99) -> dict:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (2, _TOKENS), generator=generator)
    return {"input_ids": ids}


def _image(channels: int = 3, size: int = 32, dims: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(2, channels, *([size] * dims), generator=generator)


def bert():
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=32)
    return BertModel(config), _ids()


def distilbert():
    from transformers import DistilBertConfig, DistilBertModel

    config = DistilBertConfig(vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=48,
                              max_position_embeddings=32)
    return DistilBertModel(config), _ids()


def albert():
    from transformers import AlbertConfig, AlbertModel

    config = AlbertConfig(vocab_size=99, embedding_size=16, hidden_size=32, num_hidden_layers=2,
                          num_attention_heads=4, intermediate_size=48, max_position_embeddings=32)
    return AlbertModel(config), _ids()


def vit():
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=48)
    return ViTModel(config, add_pooling_layer=False), {"pixel_values": _image(size=16)}


def swin():
    from transformers import SwinConfig, SwinModel

    config = SwinConfig(image_size=16, patch_size=2, num_channels=3, embed_dim=16, depths=[2, 2],
                        num_heads=[2, 4], window_size=4, mlp_ratio=2.0)
    return SwinModel(config), {"pixel_values": _image(size=16)}


def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=32)
    return GPT2LMHeadModel(config), _ids()


def _llama(kv_heads: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=99, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=32)
    return LlamaForCausalLM(config), _ids()


def llama():
    return _llama(4)


def llama_gqa():
    return _llama(2)


def t5_encoder():
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=99, d_model=32, d_kv=8, d_ff=48, num_layers=3, num_heads=4)  # block 0 owns the position bias
    return T5EncoderModel(config), _ids()


def resnet():
    from transformers import ResNetConfig, ResNetModel

    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[2, 2],
                          layer_type="basic")
    return ResNetModel(config), {"pixel_values": _image()}


def convnext():
    from transformers import ConvNextConfig, ConvNextModel

    config = ConvNextConfig(num_channels=3, hidden_sizes=[8, 16], depths=[2, 2], patch_size=2,
                            num_stages=2)
    return ConvNextModel(config), {"pixel_values": _image()}


def mobilenet_v2():
    from transformers import MobileNetV2Config, MobileNetV2Model

    config = MobileNetV2Config(num_channels=3, image_size=32, depth_multiplier=0.25)
    return MobileNetV2Model(config), {"pixel_values": _image()}


def efficientnet():
    from transformers import EfficientNetConfig, EfficientNetModel

    config = EfficientNetConfig(num_channels=3, image_size=32, width_coefficient=0.25, depth_coefficient=0.5,
                                hidden_dim=320)  # hidden_dim must equal round_filters(1280)
    return EfficientNetModel(config), {"pixel_values": _image()}


def monai_unet():
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8, 16), strides=(2, 2),
                num_res_units=1), _image(channels=1, size=16)


def monai_basic_unet():
    from monai.networks.nets import BasicUNet

    return BasicUNet(spatial_dims=2, in_channels=1, out_channels=2, features=(4, 4, 8, 8, 16, 4)), _image(1, 32)


def monai_densenet():
    from monai.networks.nets import DenseNet

    return DenseNet(spatial_dims=2, in_channels=1, out_channels=3, init_features=8, growth_rate=4,
                    block_config=(2, 2), bn_size=2), _image(1, 16)


def monai_segresnet():
    from monai.networks.nets import SegResNet

    return SegResNet(spatial_dims=2, init_filters=8, in_channels=1, out_channels=2, blocks_down=(1, 2),
                     blocks_up=(1,)), _image(1, 16)


BUILDERS = {
    "bert": bert, "distilbert": distilbert, "albert": albert, "vit": vit, "swin": swin, "gpt2": gpt2,
    "llama": llama, "llama-gqa": llama_gqa, "t5-encoder": t5_encoder, "resnet": resnet,
    "convnext": convnext, "mobilenet-v2": mobilenet_v2, "efficientnet": efficientnet,
    "monai-unet": monai_unet, "monai-basic-unet": monai_basic_unet, "monai-densenet": monai_densenet,
    "monai-segresnet": monai_segresnet,
}  # fmt: skip
