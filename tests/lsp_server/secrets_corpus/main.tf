terraform {
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.0"
    }
  }
}

provider "aws" {
  region     = "eu-west-1"
  access_key = "AKIAQFYVE6FRC3I75UZF"
  secret_key = "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"
}

resource "aws_db_instance" "shop" {
  identifier        = "shop-prod"
  engine            = "postgres"
  instance_class    = "db.t3.medium"
  allocated_storage = 50
  username          = "shop"
  password          = "yH8I7ZPcOY2vTZAl_aX"
}

module "monitoring" {
  source          = "./modules/monitoring"
  datadog_api_key = "fd320893932ef2875a59a1a2b8f32f06"
  datadog_app_key = "d3026ba2ff4e4bae2ab70fcf71156cfbb204910e"
}
