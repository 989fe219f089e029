"""NVIDIA's SSD300 v1.1 (ResNet-50) as a torch module, for comparisons.

Re-created from the structure of DeepLearningExamples'
`PyTorch/Detection/SSD/ssd/model.py` (not imported from their repository):
torchvision's resnet50 up to layer3 with layer3's first block at stride 1,
five extra blocks (1x1 conv -> BN -> ReLU -> 3x3 conv -> BN -> ReLU, no
biases; stride 2 with padding for the first three), plain 3x3 heads with
4/6/6/6/4/4 boxes per location whose outputs are viewed box-kind-major
(`[N, 4, A*H*W]` per map). Used by tests/test_weights_nvidia.py (the
converted model must give its outputs) and experiments/bench_zoo.py (the
torch side of the timings). Needs torch and torchvision.
"""

MIDS = (256, 256, 128, 128, 128)
OUT_CHANNELS = (1024, 512, 512, 256, 256, 256)
NUM_DEFAULTS = (4, 6, 6, 6, 4, 4)


def nvidia_trunk(torch, torchvision):
  """(torchvision's resnet50, NVIDIA's trunk: its children up to layer3,
  layer3's first block at stride 1, their `conv4_block1`)."""
  resnet = torchvision.models.resnet50(weights=None)
  trunk = torch.nn.Sequential(*list(resnet.children())[:7])
  block = trunk[-1][0]
  block.conv1.stride = (1, 1)
  block.conv2.stride = (1, 1)
  block.downsample[0].stride = (1, 1)
  return resnet, trunk


def nvidia_ssd300(torch, torchvision, num_classes: int):
  """NVIDIA's `SSD300(ResNet('resnet50'), label_num=num_classes)`.

  Returns:
    A torch module; `forward(x [N, 3, 300, 300])` gives (locs [N, 4, P],
    confs [N, num_classes, P]) in NVIDIA's box-kind-major order.
  """
  nn = torch.nn

  class ResNet(nn.Module):
    def __init__(self):
      super().__init__()
      self.out_channels = list(OUT_CHANNELS)
      self.feature_extractor = nvidia_trunk(torch, torchvision)[1]

    def forward(self, x):
      return self.feature_extractor(x)

  class SSD300(nn.Module):
    def __init__(self, backbone, label_num):
      super().__init__()
      self.feature_extractor = backbone
      self.label_num = label_num
      chans = backbone.out_channels
      blocks = []
      for i, (cin, cout, mid) in enumerate(
        zip(chans[:-1], chans[1:], MIDS, strict=True)
      ):
        strided = dict(padding=1, stride=2) if i < 3 else {}
        blocks.append(
          nn.Sequential(
            nn.Conv2d(cin, mid, kernel_size=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, kernel_size=3, bias=False, **strided),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
          )
        )
      self.additional_blocks = nn.ModuleList(blocks)
      self.num_defaults = list(NUM_DEFAULTS)
      self.loc = nn.ModuleList(
        nn.Conv2d(c, nd * 4, kernel_size=3, padding=1)
        for nd, c in zip(self.num_defaults, chans, strict=True)
      )
      self.conf = nn.ModuleList(
        nn.Conv2d(c, nd * label_num, kernel_size=3, padding=1)
        for nd, c in zip(self.num_defaults, chans, strict=True)
      )

    def forward(self, x):
      x = self.feature_extractor(x)
      feed = [x]
      for block in self.additional_blocks:
        x = block(x)
        feed.append(x)
      locs, confs = [], []
      for s, loc, conf in zip(feed, self.loc, self.conf, strict=True):
        locs.append(loc(s).view(s.size(0), 4, -1))
        confs.append(conf(s).view(s.size(0), self.label_num, -1))
      return torch.cat(locs, 2).contiguous(), torch.cat(confs, 2).contiguous()

  return SSD300(ResNet(), num_classes)
